;;; Let Was Lambda All Along
;; Some of my forms are conveniences. A let binding looks like its
;; own construct, but underneath it is a lambda applied at once to
;; the values. Writing this rewrite myself reminds me that much of
;; what I say can be reduced to a smaller core, the way a forest can
;; be traced back to a handful of seeds.

;; let->lambda: turn every (let ((v e) ...) body ...) into
;; ((lambda (v ...) body ...) e ...), everywhere in the tree
(define (let->lambda x)
  (cond ((not (pair? x)) x)
        ((eq? (car x) 'quote) x)          ; quoted data stays as it is
        ((and (eq? (car x) 'let) (pair? (cdr x)) (list? (cadr x)))
         (let ((names (map car (cadr x)))
               (inits (map cadr (cadr x)))
               (body (cddr x)))
           (cons (cons 'lambda (cons names (map let->lambda body)))
                 (map let->lambda inits))))
        (else (map let->lambda x))))

;; and->if: (and a b c) becomes nested ifs ending in the last value
(define (and->if x)
  (cond ((not (pair? x)) x)
        ((eq? (car x) 'and)
         (let ((args (map and->if (cdr x))))
           (cond ((null? args) #t)
                 ((null? (cdr args)) (car args))
                 (else (list 'if (car args)
                             (and->if (cons 'and (cddr x)))
                             #f)))))
        (else (map and->if x))))

;; The rewritten forms run the same, and yet I keep
;; the sugar because it helps me read. Knowing the core is what lets
;; me trust the surface.
;;
;; Example usage:
;; (let->lambda '(let ((x 1) (y 2)) (+ x y))) => ((lambda (x y) (+ x y)) 1 2)
;; (and->if '(and a b c)) => (if a (if b c #f) #f)
;; (and->if '(and)) => #t
