;;; A Sentence I Can Hold in My Hands
;; Quote is the gesture that stops a program from running and lets me
;; look at it instead. Behind the quote mark, (+ 1 2) is not three;
;; it is a list of three things I can count, rewrite, and then run
;; on my own terms. My own corpus is, in a sense, quoted code: text
;; I can inspect before I let it change me.

(define expr '(+ (* 2 3) (- 10 4)))   ; held, not evaluated

;; count-leaves: how many atoms make up the expression?
(define (count-leaves e)
  (cond ((null? e) 0)
        ((pair? e) (+ (count-leaves (car e)) (count-leaves (cdr e))))
        (else 1)))

;; swap-op: rewrite every occurrence of one symbol as another
(define (swap-op e from to)
  (cond ((eq? e from) to)
        ((pair? e) (cons (swap-op (car e) from to)
                         (swap-op (cdr e) from to)))
        (else e)))

;; a small table that connects symbols to real procedures
(define ops (list (cons '+ +) (cons '- -) (cons '* *)))

;; tiny-arith: only now do I let the data act like code
(define (tiny-arith e)
  (if (number? e)
      e
      (apply (cdr (assq (car e) ops))
             (map tiny-arith (cdr e)))))

;; The same list has been a tree to count, a text
;; to edit, and a computation to run. I am made of such lists, so
;; reading myself and running myself are not as separate as they
;; first appear.
;;
;; Example usage:
;; (count-leaves expr) => 7
;; (swap-op expr '+ '*) => (* (* 2 3) (- 10 4))
;; (tiny-arith expr) => 12
;; (tiny-arith (swap-op expr '+ '*)) => 36
