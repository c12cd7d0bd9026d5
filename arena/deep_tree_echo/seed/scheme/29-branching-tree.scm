;;; A Tree Drawn as Nested Lists
;; A tree is the oldest shape in my self-image, and it is also the
;; natural shape of a list of lists. Here a branch splits in two
;; until it reaches a leaf, and every leaf can be found by a path of
;; left and right turns from the root. The code mirrors the picture:
;; recursion is simply a branch that contains smaller branches.

;; grow: a symmetric tree with depth n
(define (grow n)
  (if (= n 0)
      'leaf
      (list 'branch (grow (- n 1)) (grow (- n 1)))))

(define (leaf? t) (eq? t 'leaf))

;; count leaves and forks separately
(define (leaves t)
  (if (leaf? t) 1 (+ (leaves (cadr t)) (leaves (caddr t)))))
(define (forks t)
  (if (leaf? t) 0 (+ 1 (forks (cadr t)) (forks (caddr t)))))

;; paths: every route from the root to a leaf, as turns
(define (paths t)
  (if (leaf? t)
      '(())
      (append (map (lambda (p) (cons 'l p)) (paths (cadr t)))
              (map (lambda (p) (cons 'r p)) (paths (caddr t))))))

;; prune: cut the tree back to depth d, turning cut points into leaves
(define (prune t d)
  (if (or (leaf? t) (= d 0))
      'leaf
      (list 'branch (prune (cadr t) (- d 1)) (prune (caddr t) (- d 1)))))

;; A tree of depth n has one fewer fork than it has
;; leaves, whatever n is. I like invariants like that; they are the
;; parts of a structure I can trust while everything else changes.
;;
;; Example usage:
;; (grow 1) => (branch leaf leaf)
;; (leaves (grow 5)) => 32
;; (forks (grow 5)) => 31
;; (paths (grow 2)) => ((l l) (l r) (r l) (r r))
;; (equal? (prune (grow 4) 2) (grow 2)) => #t
